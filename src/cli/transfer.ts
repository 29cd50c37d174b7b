/**
 * Host verbs `push` and `pull`: whole files to and from the guest, with
 * progress on stderr and a summary line on stdout.
 *
 *   kvm-manager-agent push LOCAL GUEST --socket S [--mode 0644] [--create-dirs] [--no-overwrite]
 *   kvm-manager-agent pull GUEST LOCAL --socket S
 */
import { parseArgs } from "node:util";
import { AgentClient, AgentRpcError, DEFAULT_TIMEOUT_MS } from "../client/client.ts";
import { pullFile, pushFile, type TransferProgress, type TransferResult } from "../client/transfer.ts";
import { UsageError } from "./agent-args.ts";

export const TRANSFER_USAGE = `  kvm-manager-agent push LOCAL GUEST --socket PATH [--mode 0644] [--create-dirs] [--no-overwrite] [--quiet]
  kvm-manager-agent pull GUEST LOCAL --socket PATH [--quiet]
                  copy a whole file to / from the guest (chunked, SHA-256 checked); progress on stderr`;

export function isTransferVerb(verb: string): verb is "push" | "pull" {
  return verb === "push" || verb === "pull";
}

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
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        socket: { type: "string", short: "s" },
        mode: { type: "string" },
        "create-dirs": { type: "boolean" },
        "no-overwrite": { type: "boolean" },
        quiet: { type: "boolean", short: "q" },
        timeout: { type: "string" },
        wait: { type: "string" },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const [from, to, ...extra] = parsed.positionals;
  if (from === undefined || to === undefined) throw new UsageError(verb === "push" ? "push needs LOCAL and GUEST paths" : "pull needs GUEST and LOCAL paths");
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
  const socket = parsed.values.socket;
  if (!socket) throw new UsageError("--socket PATH is required");
  const mode = parsed.values.mode;
  if (mode !== undefined) {
    if (verb === "pull") throw new UsageError("--mode applies to push only");
    if (!/^0?[0-7]{3,4}$/.test(mode)) throw new UsageError(`--mode must be an octal mode like 0644 (got '${mode}')`);
  }
  if (verb === "pull" && (parsed.values["create-dirs"] || parsed.values["no-overwrite"])) {
    throw new UsageError("--create-dirs and --no-overwrite apply to push only");
  }
  const timeoutMs = positiveInt(parsed.values.timeout, "--timeout") ?? DEFAULT_TIMEOUT_MS;
  const waitMs = positiveInt(parsed.values.wait, "--wait");

  let client: AgentClient;
  try {
    client = await AgentClient.connect(socket, { timeoutMs });
  } catch (error) {
    err(`kvm-manager-agent: ${(error as Error).message}\n`);
    return 3;
  }
  const reporter = parsed.values.quiet ? undefined : progressReporter(verb, err, isTty);
  try {
    if (waitMs !== undefined) await client.waitReady({ timeoutMs: waitMs });
    let result: TransferResult;
    if (verb === "push") {
      result = await pushFile(client, from, to, {
        onProgress: reporter?.update,
        ...(mode !== undefined ? { mode } : {}),
        createDirs: parsed.values["create-dirs"] ?? false,
        overwrite: !parsed.values["no-overwrite"],
      });
    } else {
      result = await pullFile(client, from, to, { onProgress: reporter?.update });
    }
    reporter?.done();
    const seconds = result.elapsedMs / 1000;
    const rate = seconds > 0 ? result.bytes / 1e6 / seconds : 0;
    out(
      `${verb === "push" ? "pushed" : "pulled"} ${from} -> ${verb === "push" ? result.path : to}: ${result.bytes} bytes in ${seconds.toFixed(2)} s (${rate.toFixed(1)} MB/s), sha256 ${result.sha256}`,
    );
    return 0;
  } catch (error) {
    reporter?.done();
    err(`kvm-manager-agent: ${verb} failed: ${(error as Error).message}\n`);
    return error instanceof AgentRpcError || !(error as Error)?.name?.startsWith("Agent") ? 1 : 3;
  } finally {
    client.close();
  }
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

function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer of milliseconds (got '${value}')`);
  return n;
}
