/**
 * guest-exec / guest-exec-status on the agent's own exec service, so QGA
 * callers get the same policy as native ones: off unless enable_exec, then
 * only allowlisted commands, loader variables refused, a timeout that kills
 * the process group. qemu-ga names processes by pid and forgets one after
 * its first "exited" answer; so does this.
 */
import { constants } from "node:os";
import type { ExecService } from "../services.ts";
import { genericError } from "./errors.ts";
import type { QgaArgs } from "./schema.ts";

interface Started {
  handle: string;
  capture: boolean;
}

export class QgaExec {
  private readonly byPid = new Map<number, Started>();

  constructor(
    private readonly exec: ExecService,
    /** At most this many pids are remembered (the exec service keeps no more records either). */
    private readonly maxRemembered: number,
  ) {}

  async start(args: QgaArgs<"guest-exec">): Promise<{ pid: number }> {
    const env: Record<string, string> = {};
    for (const entry of args.env ?? []) {
      const eq = entry.indexOf("=");
      if (eq <= 0) throw genericError(`Invalid parameter 'env': '${entry}' is not NAME=VALUE`);
      env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    const { handle, pid } = await this.exec.start(
      { command: args.path, args: args.arg ?? [], env, stdin_base64: args["input-data"], stream: false },
      { transport: "qga", notify() {} },
    );
    if (this.byPid.size >= this.maxRemembered) this.byPid.delete(this.byPid.keys().next().value!);
    this.byPid.set(pid, { handle, capture: args["capture-output"] ?? false });
    return { pid };
  }

  async status(pid: number): Promise<Record<string, unknown>> {
    const started = this.byPid.get(pid);
    if (!started) throw genericError("Invalid parameter 'pid'");
    let status;
    try {
      status = await this.exec.status({ handle: started.handle, wait_ms: 0 });
    } catch {
      this.byPid.delete(pid); // The record expired: as unknown as a pid never started.
      throw genericError("Invalid parameter 'pid'");
    }
    if (status.running || !status.result) return { exited: false };
    this.byPid.delete(pid);
    const { result } = status;
    const reply: Record<string, unknown> = { exited: true };
    if (result.exit_code !== null) reply.exitcode = result.exit_code;
    else if (result.signal !== null) reply.signal = constants.signals[result.signal as keyof typeof constants.signals];
    // Like qemu-ga: data and its truncated flag only for captured output that is not empty.
    if (started.capture && result.stdout_base64 !== "") {
      reply["out-data"] = result.stdout_base64;
      reply["out-truncated"] = result.stdout_truncated;
    }
    if (started.capture && result.stderr_base64 !== "") {
      reply["err-data"] = result.stderr_base64;
      reply["err-truncated"] = result.stderr_truncated;
    }
    return reply;
  }
}
