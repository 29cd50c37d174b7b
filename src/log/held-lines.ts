/**
 * A line writer that can keep its lines in memory while filesystems are
 * frozen (a write to a frozen filesystem blocks the writer until the thaw).
 * Bounded: past MAX_HELD_LINES lines are counted, not kept, and the count is
 * written on release.
 */
import type { Holdable } from "../fsfreeze/fsfreeze.ts";

export const MAX_HELD_LINES = 10_000;

export class HeldLines implements Holdable {
  private held: string[] | null = null;
  private dropped = 0;

  constructor(
    private readonly writeThrough: (line: string) => void,
    /** How the count of lines not kept reads in the output. */
    private readonly droppedNotice: (count: number) => string,
    /** Writes what writeThrough buffered; awaited before holding. */
    private readonly flush: () => unknown = () => {},
  ) {}

  readonly write = (line: string): void => {
    if (this.held === null) this.writeThrough(line);
    else if (this.held.length < MAX_HELD_LINES) this.held.push(line);
    else this.dropped++;
  };

  get holding(): boolean {
    return this.held !== null;
  }

  async hold(): Promise<void> {
    if (this.held !== null) return;
    this.held = []; // first, so that nothing written while the flush runs goes to the file
    await this.flush();
  }

  release(): void {
    const lines = this.held;
    if (lines === null) return;
    this.held = null;
    for (const line of lines) this.writeThrough(line);
    if (this.dropped > 0) this.writeThrough(this.droppedNotice(this.dropped));
    this.dropped = 0;
  }
}
