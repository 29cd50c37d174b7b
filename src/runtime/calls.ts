/**
 * The calls running right now, on both protocols: a stopping agent lets them
 * finish (up to [limits] stop_grace_seconds) and takes no new ones.
 */
export class CallTracker {
  private running = 0;
  private idle: (() => void)[] = [];
  /** Set once the agent is stopping: new calls are refused. */
  stopping = false;

  get active(): number {
    return this.running;
  }

  begin(): void {
    this.running++;
  }

  end(): void {
    if (--this.running === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  /** Resolves true once no call runs, or false when `ms` pass first. */
  drained(ms: number): Promise<boolean> {
    if (this.running === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
