/**
 * A full garbage collection once the agent has gone quiet after traffic.
 * JavaScriptCore collects when it sees fit, so after a burst the agent's RSS
 * sits wherever the heap happened to be; in a guest, where every MiB is the
 * VM owner's, it should come back to its idle level. One check per second,
 * one collection per quiet spell, none while requests keep coming.
 */
const CHECK_EVERY_MS = 1_000;

export class IdleGc {
  private active = false;
  private owed = false;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly collect: () => void = () => Bun.gc(true),
    private readonly checkEveryMs = CHECK_EVERY_MS,
  ) {}

  /** Called on every chunk a connection receives: a flag write, nothing more. */
  noteActivity(): void {
    this.active = true;
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), this.checkEveryMs);
      this.timer.unref();
    }
  }

  /** A second with traffic owes a collection; the first quiet second after it pays. */
  tick(): void {
    if (this.active) {
      this.active = false;
      this.owed = true;
    } else if (this.owed) {
      this.owed = false;
      this.collect();
    }
  }
}

/** The agent's one instance, shared by both protocols' sessions. */
export const idleGc = new IdleGc();
