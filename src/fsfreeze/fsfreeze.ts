/**
 * Filesystem freeze for consistent snapshots, with qemu-ga's rules: the hook
 * runs before the freeze and after the thaw, mounts freeze last-mounted first,
 * a filesystem that cannot freeze (EOPNOTSUPP) or is already frozen through
 * another mount (EBUSY) is skipped, and any other failure thaws everything.
 *
 * While frozen the agent must not write to disk, or it would hang on its own
 * log: everything that writes (audit, log) is held in memory until the thaw,
 * both protocols refuse all but the frozen-safe calls, and a state file makes
 * a restarted agent come back frozen, as qemu-ga's qga.state.isfrozen does.
 */
import { accessSync, closeSync, constants, mkdirSync, openSync, statSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { errnoOf } from "../files/fsx.ts";
import type { Logger } from "../log/logger.ts";
import { RpcError } from "../protocol/errors.ts";
import { strerror } from "../guest/errors.ts";

/** Something that writes to disk and can keep its writes in memory while filesystems are frozen. */
export interface Holdable {
  /** Flush what is pending, then keep new writes in memory. */
  hold(): Promise<void>;
  /** Write what was kept, and write through again. */
  release(): void;
}

/** The ioctls on one mounted filesystem (linux.ts has the real ones; tests inject their own). */
export interface FreezeOps {
  /** Mountpoints of block-backed filesystems, in mount order. */
  mounts(): string[];
  /**
   * FIFREEZE: true when frozen, false when the filesystem cannot be (EOPNOTSUPP) or is already (EBUSY); rejects
   * otherwise. Asynchronous: it waits for the filesystem's writers, and the agent goes on answering meanwhile.
   */
  freeze(mountpoint: string): Promise<boolean>;
  /** FITHAW until it fails: true when at least one call thawed. */
  thaw(mountpoint: string): boolean;
}

export type FreezeStatus = "thawed" | "frozen";

/** The state file qemu-ga keeps in its state directory; the same name, so either agent sees the other's. */
export const FROZEN_STATE_FILE = "qga.state.isfrozen";

const failed = (message: string) => new RpcError("OPERATION_FAILED", message);

export class FsFreeze {
  private frozen: boolean;
  private readonly stateFile: string;
  private readonly holds: Holdable[] = [];
  private readonly onThaw: (() => void)[] = [];
  /** freeze and thaw run one at a time: a thaw arriving during a freeze waits for it. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    stateDir: string,
    private readonly hook: string | undefined,
    private readonly ops: FreezeOps,
    private readonly logger: Logger,
  ) {
    this.stateFile = join(stateDir, FROZEN_STATE_FILE);
    this.frozen = stateFileExists(this.stateFile);
  }

  get stateFilePath(): string {
    return this.stateFile;
  }

  get status(): FreezeStatus {
    return this.frozen ? "frozen" : "thawed";
  }

  /** Registers a writer; one registered while frozen (at start-up) holds at once. */
  addHoldable(holdable: Holdable): void {
    this.holds.push(holdable);
    if (this.frozen) void holdable.hold();
  }

  /** Runs now when thawed, else right after the next thaw (e.g. a pidfile a frozen start-up must not write yet). */
  whenThawed(action: () => void): void {
    if (this.frozen) this.onThaw.push(action);
    else action();
  }

  /** Freezes every block-backed filesystem, or only those listed; returns how many froze. */
  freeze(mountpoints?: readonly string[]): Promise<number> {
    return this.serialized(async () => {
      // A second freeze queued behind the first must not count zero and thaw the state it did not set.
      if (this.frozen) throw failed("filesystems are already frozen");
      await this.runHook("freeze");
      const mounts = this.ops.mounts();
      await this.setFrozen();
      let count = 0;
      try {
        for (const mountpoint of mounts.toReversed()) {
          if (mountpoints && !mountpoints.includes(mountpoint)) continue;
          if (await this.ops.freeze(mountpoint)) count++;
        }
      } catch (error) {
        await this.thawAll().catch((thawError) => this.logger.error("thaw after a failed freeze failed", { error: String(thawError) }));
        throw error;
      }
      // Nothing froze (nothing listed was mounted): no reason to stay frozen. The thaw hook is not run, as qemu-ga does not.
      if (count === 0) this.setThawed();
      return count;
    });
  }

  /** Thaws every block-backed filesystem; returns how many were frozen. Always leaves the agent thawed. */
  thaw(): Promise<number> {
    return this.serialized(() => this.thawAll());
  }

  private async thawAll(): Promise<number> {
    let count = 0;
    for (const mountpoint of this.ops.mounts()) if (this.ops.thaw(mountpoint)) count++;
    this.setThawed();
    await this.runHook("thaw");
    return count;
  }

  private serialized<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => {});
    return run;
  }

  private async setFrozen(): Promise<void> {
    if (this.frozen) return;
    // Flush before the first FIFREEZE: a write after it would block the agent.
    await Promise.all(this.holds.map((holdable) => holdable.hold()));
    this.frozen = true;
    try {
      mkdirSync(join(this.stateFile, ".."), { recursive: true, mode: 0o700 });
      closeSync(openSync(this.stateFile, constants.O_CREAT | constants.O_WRONLY, 0o600));
    } catch (error) {
      this.logger.warn("cannot create the frozen-state file: a restart during the freeze will not know filesystems are frozen", {
        state_file: this.stateFile,
        error: strerror(error),
      });
    }
  }

  private setThawed(): void {
    if (!this.frozen) return;
    this.frozen = false;
    try {
      unlinkSync(this.stateFile);
    } catch (error) {
      if (errnoOf(error) !== "ENOENT") this.logger.warn("cannot remove the frozen-state file", { state_file: this.stateFile, error: strerror(error) });
    }
    for (const holdable of this.holds) holdable.release();
    for (const action of this.onThaw.splice(0)) action();
  }

  /** The fsfreeze hook with 'freeze' or 'thaw', its output discarded; a failure fails the call with qemu-ga's words. */
  private async runHook(phase: "freeze" | "thaw"): Promise<void> {
    const hook = this.hook;
    if (!hook) return;
    try {
      accessSync(hook, constants.X_OK);
    } catch (error) {
      throw failed(`can't access fsfreeze hook '${hook}': ${strerror(error)}`);
    }
    this.logger.info("running the fsfreeze hook", { hook, phase });
    const child = Bun.spawn([hook, phase], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
    const status = await child.exited;
    if (child.signalCode) throw failed("fsfreeze hook has terminated abnormally");
    if (status !== 0) throw failed(`fsfreeze hook has failed with status ${status}`);
  }
}

/** Missing means thawed; unreadable is a config problem to stop on, as qemu-ga stops. */
function stateFileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return false;
    throw new Error(`cannot access the frozen-state file ${path}: ${strerror(error)}`);
  }
}
